#!/usr/bin/env bash
# Remove Python caches (__pycache__, *.pyc, .pytest_cache) under this folder, and nothing else.
cd "$(dirname "$0")" || exit 1
find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
find . -path ./.git -prune -o -type f -name '*.pyc' -exec rm -f {} +
rm -rf .pytest_cache
