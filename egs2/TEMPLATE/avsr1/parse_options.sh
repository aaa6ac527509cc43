#!/usr/bin/env bash
# Turns "--some_option value" arguments into assignments of existing shell variables
# (some_option=value). Source it after the defaults are set; an unknown option is an error.
# "--help" prints the variables that can be set, with their defaults.
while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h)
            echo "Usage: $0 [options]; options (default value):" >&2
            for _v in ${_options:-}; do echo "  --${_v} (${!_v})" >&2; done
            exit 0 ;;
        --*=*) _name=${1%%=*}; _name=${_name#--}; _value=${1#*=}; shift ;;
        --*) _name=${1#--}; [ $# -ge 2 ] || { echo "$0: option --${_name} needs a value" >&2; exit 1; }
             _value=$2; shift 2 ;;
        *) break ;;
    esac
    if ! declare -p "${_name}" >/dev/null 2>&1; then
        echo "$0: unknown option --${_name} (see --help)" >&2
        exit 1
    fi
    printf -v "${_name}" '%s' "${_value}"
done
