#!/bin/sh
# A chorus command function in shell: one stage of an application's upgrade (the steps of
# examples/upgrade.workflow.toml). Each stage works in a directory of its own run under
# $UPGRADE_DIR (default: $TMPDIR/chorus-upgrade or /tmp/chorus-upgrade), standing in for a
# branch and a test deployment; only `release` leaves something behind that `clean_up` keeps.
# A version ending in "-broken" fails verification, to show the clean-up running after a
# failure. Needs only sh and sed; each request is one line of JSON, each reply one line.
root="${UPGRADE_DIR:-${TMPDIR:-/tmp}/chorus-upgrade}"

# The value of a flat string or number field of the request line.
field() {
    printf '%s' "$line" | sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"
}

reply_error() {
    printf '{"error":{"code":"%s","message":"%s"}}\n' "$1" "$2"
}

while IFS= read -r line; do
    stage=$(field stage)
    app=$(field app)
    version=$(field version)
    run=$(field run)
    case "$app$version$run" in
        "" | *[!A-Za-z0-9._-]*)
            reply_error invalid_input "app, version and run must be letters, digits, '.', '_' or '-'"
            continue
            ;;
    esac
    work="$root/$app/run-$run"
    echo "$stage: $app $version (run $run)" >&2
    case "$stage" in
        change)
            mkdir -p "$work/branch" && printf '%s\n' "$version" >"$work/branch/VERSION"
            printf '{"output":{"branch":"upgrade-%s-%s"}}\n' "$app" "$version"
            ;;
        deploy_test)
            if [ ! -f "$work/branch/VERSION" ]; then
                reply_error not_found "no branch for run $run: did change run?"
                continue
            fi
            mkdir -p "$work/test" && cp "$work/branch/VERSION" "$work/test/VERSION"
            printf '{"output":{"environment":"test-%s-run%s","branch":"%s"}}\n' "$app" "$run" "$(field branch)"
            ;;
        verify)
            deployed=$(cat "$work/test/VERSION" 2>/dev/null)
            case "$deployed" in
                "$version")
                    case "$version" in
                        *-broken) reply_error verification_failed "$app $version fails its checks" ;;
                        *) printf '{"output":{"verified":"%s"}}\n' "$version" ;;
                    esac
                    ;;
                *) reply_error verification_failed "the test deployment runs '$deployed', not $version" ;;
            esac
            ;;
        release)
            printf '%s\n' "$version" >"$root/$app/RELEASED"
            printf '{"output":{"released":"%s"}}\n' "$version"
            ;;
        clean_up)
            removed=false
            if [ -d "$work" ]; then rm -rf "$work" && removed=true; fi
            printf '{"output":{"removed":%s,"run_state":"%s"}}\n' "$removed" "$(field state)"
            ;;
        *)
            reply_error invalid_input "unknown stage '$stage'"
            ;;
    esac
done
