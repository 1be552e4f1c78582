#!/usr/bin/env python3
"""A chorus command function in Python, the last step of examples/song.workflow.toml: from the
song's analysis and its transcodes it makes one catalogue line (JSON), writes it to
`out_dir/catalogue.jsonl` (which becomes an output object) and answers it as its output.
One JSON request per line on stdin, one JSON reply per line on stdout, logs on stderr."""
import json
import os
import sys


def field(value, name):
    """`value[name]` when value is an object, else None (an analysis may find no tempo)."""
    return value.get(name) if isinstance(value, dict) else None


def catalogue_line(request):
    given = request["input"]
    if not isinstance(given, dict) or not isinstance(given.get("song"), str):
        raise ValueError("input.song must be the song's object key")
    transcodes = given.get("transcodes")
    if not isinstance(transcodes, list):
        raise ValueError("input.transcodes must be the transcode step's list of outputs")
    files = []
    for transcode in transcodes:
        for output in field(transcode, "outputs") or []:
            files.append({key: output.get(key) for key in ("format", "file", "bytes")})
    tempo, key, chorus = given.get("tempo"), given.get("key"), given.get("chorus")
    return {
        "song": given["song"],
        "run": given.get("run"),
        "duration_s": given.get("duration_s"),
        "loudness_lufs": given.get("loudness_lufs"),
        "bpm": field(tempo, "bpm"),
        "key": field(key, "name"),
        "chorus_s": [field(chorus, "start_s"), field(chorus, "end_s")] if chorus else None,
        "files": files,
    }


for text in sys.stdin:
    request = json.loads(text)
    try:
        line = catalogue_line(request)
    except ValueError as e:
        reply = {"error": {"code": "invalid_input", "message": str(e)}}
    else:
        with open(os.path.join(request["out_dir"], "catalogue.jsonl"), "w") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
        print(f"catalogued {line['song']}: {len(line['files'])} files", file=sys.stderr, flush=True)
        reply = {"output": line}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
