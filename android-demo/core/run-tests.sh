#!/usr/bin/env bash
# Compile the Kotlin core and its golden-vector test runner with kotlinc, then run it.
#
#   android-demo/core/run-tests.sh GOLDEN_DIR
#
# GOLDEN_DIR is written by edgederm.demo.golden.write_golden (tests/test_android_core.py does it).
# Needs: kotlinc + java (Debian: apt-get install kotlin; or npm install -g kotlin-compiler, or set
# KOTLINC=/path/to/kotlinc) and
# Android's org.json (Debian: apt-get install libandroid-json-java), or EDGEDERM_ANDROID_JSON_JAR.
# The jar is cached in android-demo/core/build/ and rebuilt only when a source or kotlinc changes.
# The runner's last line is "N passed, M failed"; the exit code is non-zero if any check failed.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 GOLDEN_DIR" >&2
    exit 2
fi
GOLDEN=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=$HERE/build
JAR=$BUILD/core-tests.jar

# KOTLINC: a kotlinc to use instead of the one on PATH (e.g. node_modules/kotlin-compiler/bin/kotlinc).
KOTLINC=${KOTLINC:-kotlinc}
command -v "$KOTLINC" >/dev/null || { echo "kotlinc not found: apt-get install -y kotlin (or npm install -g kotlin-compiler)" >&2; exit 3; }
command -v java >/dev/null || { echo "java not found: apt-get install -y default-jdk-headless" >&2; exit 3; }
JSON_JAR=${EDGEDERM_ANDROID_JSON_JAR:-}
if [ -z "$JSON_JAR" ]; then
    for j in /usr/share/java/json-android.jar /usr/share/java/com.android.json.jar; do
        [ -f "$j" ] && JSON_JAR=$j && break
    done
fi
[ -n "$JSON_JAR" ] && [ -f "$JSON_JAR" ] || { echo "Android's org.json jar not found: apt-get install -y libandroid-json-java" >&2; exit 3; }

SOURCES=$(cd "$HERE" && find src/main/kotlin src/test/kotlin -name '*.kt' | LC_ALL=C sort)
STAMP=$( (cd "$HERE" && sha256sum $SOURCES; "$KOTLINC" -version 2>&1 | grep -i kotlin; echo "$JSON_JAR") | sha256sum | cut -c1-64)

mkdir -p "$BUILD"
# One compile at a time (parallel test runs share the cache).
if command -v flock >/dev/null; then exec 9>"$BUILD/.lock"; flock 9; fi
if [ -f "$JAR" ] && [ "$(cat "$BUILD/stamp" 2>/dev/null)" = "$STAMP" ]; then
    echo "using cached $JAR"
else
    echo "compiling the Kotlin core and tests ($("$KOTLINC" -version 2>&1 | grep -io 'kotlinc-jvm [0-9.]*'))"
    start=$(date +%s)
    rm -f "$JAR" "$BUILD/stamp"
    # -include-runtime bundles the Kotlin stdlib, so java runs it whichever kotlinc built it.
    (cd "$HERE" && "$KOTLINC" $SOURCES -cp "$JSON_JAR" -include-runtime -d "$JAR" 2>&1 | grep -v -e 'noverify' -e '^warning:' >&2 || true)
    [ -f "$JAR" ] || { echo "kotlinc failed" >&2; exit 4; }
    echo "$STAMP" > "$BUILD/stamp"
    echo "compiled in $(( $(date +%s) - start )) s"
fi
exec java -cp "$JAR:$JSON_JAR" org.edgederm.core.GoldenTestKt "$GOLDEN"
