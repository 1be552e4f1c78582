#!/usr/bin/env python3
"""A chorus command function in Python: one JSON request per line on stdin, one JSON reply
per line on stdout, logs on stderr. Greets `input.name`, and for each input file writes its
size and SHA-256 to `out_dir/sizes.json` (which becomes an output object)."""
import hashlib
import json
import os
import sys

for line in sys.stdin:
    request = json.loads(line)
    name = request["input"].get("name")
    if not isinstance(name, str):
        reply = {"error": {"code": "invalid_input", "message": "input.name must be a string"}}
    else:
        print(f"greeting {name}", file=sys.stderr, flush=True)
        sizes = []
        for path in request["files"]:
            with open(path, "rb") as f:
                data = f.read()
            sizes.append({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        if sizes:
            with open(os.path.join(request["out_dir"], "sizes.json"), "w") as f:
                json.dump(sizes, f)
        reply = {"output": {"greeting": f"hello {name}", "files": len(sizes)}}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
