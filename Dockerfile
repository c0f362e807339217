# riverstream: the learner and the API from one image.
#   docker build -t riverstream .
#   docker run --rm riverstream --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Every package pyproject.toml lists ([tool.setuptools] packages), or `pip install .` fails;
# tests/foundation/test_docker_build.py builds a wheel from exactly what these lines copy.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY stream ./stream
COPY learners ./learners
COPY serving ./serving
COPY observability ./observability
COPY console ./console
# A C compiler for the build only (serving/_v2_body.c, the v2 infer body's reader,
# learners/_linear_pass.c, the learner's scaler pass, learners/_tree_pass.c, a learning
# tree's Gaussians, and learners/_ensemble_pass.c, a served ensemble's mean; the image fails to
# build without them), then removed.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install '.[parquet]' \
    && (cd /tmp && python -c 'import serving._v2_body, learners._linear_pass, learners._tree_pass, learners._ensemble_pass') \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/*

# Non-root; the state directory (pids, local key) is the only writable place it needs.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin riverstream \
    && mkdir -p /var/lib/riverstream \
    && chown riverstream:riverstream /var/lib/riverstream
USER riverstream
ENV RIVERSTREAM_STATE_DIR=/var/lib/riverstream

# The learner's /metrics, the API and the console.
EXPOSE 9108 8000 8050

ENTRYPOINT ["riverstream"]
CMD ["--help"]
