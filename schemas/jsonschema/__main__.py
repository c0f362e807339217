from schemas.jsonschema import write

write()
