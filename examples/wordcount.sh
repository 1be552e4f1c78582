#!/bin/sh
# A chorus command function in shell: counts the words of input.text.
# Needs only sh and sed; each request is one line of JSON, each reply one line.
while IFS= read -r line; do
    text=$(printf '%s' "$line" | sed -n 's/.*"text":"\([^"]*\)".*/\1/p')
    words=$(printf '%s' "$text" | wc -w | tr -d ' ')
    echo "counted $words words" >&2
    printf '{"output":{"words":%s}}\n' "$words"
done
