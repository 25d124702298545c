#!/usr/bin/env python3
"""Converts openapi.yaml into a compact JSON C string served at /openapi.json.

Usage: embed_openapi.py OUTPUT.c INPUT.yaml
"""
import json
import sys

import yaml


def main():
    output, source = sys.argv[1], sys.argv[2]
    with open(source, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    with open(output, "w", encoding="ascii") as f:
        f.write("/* Generated from openapi/openapi.yaml by openapi/embed_openapi.py. */\n")
        f.write("#include <stddef.h>\n\n")
        f.write("const char h_openapi_json[] = {\n")
        for i in range(0, len(text), 16):
            f.write("    " + ", ".join(str(b) for b in text[i:i + 16]) + ",\n")
        f.write("    0};\n")
        f.write(f"const size_t h_openapi_json_len = {len(text)};\n")


if __name__ == "__main__":
    main()
