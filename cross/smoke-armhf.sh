#!/usr/bin/env bash
# The armhf smoke run (see smoke.sh).
exec bash "$(dirname "$0")/smoke.sh" armhf "$@"
