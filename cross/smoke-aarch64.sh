#!/usr/bin/env bash
# The aarch64 smoke run (see smoke.sh).
exec bash "$(dirname "$0")/smoke.sh" arm64 "$@"
