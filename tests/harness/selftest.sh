#!/usr/bin/env bash
# The test harness checked against itself: each check below is a way a test could once pass
# without testing, made to happen on purpose; the harness must fail, and say why.
#  1. scripts/ironic/lib.sh: an Ironic answer of 4xx/5xx fails the `api` call (with its body);
#  2. NODE=$(enroll …) fails where the enrolment failed (a node that ends "manage failed");
#  3. tests/vm/deploy.sh refuses a misspelled flow name at once (no flow silently dropped);
#  4. the fault suite refuses a run count below one run per fault class (RIVET_FAULT_RUNS=0).
# A stand-in for Ironic's API on 127.0.0.1 answers 1 and 2.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
SRV=
cleanup() { [[ -z "$SRV" ]] || { kill "$SRV" 2>/dev/null || true; wait "$SRV" 2>/dev/null || true; }; rm -rf "$WORK"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

python3 - "$WORK/port" <<'PY' &
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def answer(self, code, body):
        b = json.dumps(body).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def do_GET(self):
        if self.path == "/v1/nodes/missing": self.answer(404, {"error_message": "Node missing could not be found."})
        elif self.path == "/v1/nodes/broken": self.answer(500, {"error_message": "internal"})
        elif self.path.startswith("/v1/nodes/n-1"): self.answer(200, {"uuid": "n-1", "provision_state": "manage failed", "last_error": "BMC refused"})
        else: self.answer(404, {})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.answer(201, {"uuid": "n-1"})
    do_PUT = do_PATCH = do_DELETE = do_POST
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
PY
SRV=$!
for _ in $(seq 1 50); do [[ -s "$WORK/port" ]] && break; sleep 0.1; done
[[ -s "$WORK/port" ]] || fail "the stand-in API did not start"
export API="http://127.0.0.1:$(cat "$WORK/port")" PY=python3

# 1. 4xx/5xx answers fail the call and name it.
for path in missing broken; do
  if out=$(bash -c 'set -euo pipefail; source "$1/scripts/ironic/lib.sh"; api GET /v1/nodes/'"$path" _ "$ROOT" 2>&1); then
    fail "lib.sh: api GET /v1/nodes/$path passed on an error answer: $out"
  fi
  [[ "$out" == *"GET /v1/nodes/$path failed"* ]] || fail "lib.sh: unclear error for $path: $out"
done
echo "ok: lib.sh api fails on 404 and 500 answers, naming the call"

# 2. An enrolment that fails fails the assignment, with the node's error.
if out=$(bash -c 'set -euo pipefail; source "$1/scripts/ironic/lib.sh"; NODE=$(enroll node-x 52:54:00:00:00:01); echo "GOT $NODE"' _ "$ROOT" 2>&1); then
  fail "lib.sh: NODE=\$(enroll …) succeeded for a node that ended 'manage failed': $out"
fi
[[ "$out" != *"GOT "* && "$out" == *"manage failed"*"BMC refused"* ]] || fail "lib.sh: enroll failure unclear: $out"
echo "ok: NODE=\$(enroll …) fails where the enrolment failed, with the node's last error"

# 3. A misspelled flow is refused before anything starts.
if out=$(FLOWS="vmedia rescure" timeout 20 "$ROOT/tests/vm/deploy.sh" 2>&1); then
  fail "deploy.sh accepted FLOWS='vmedia rescure': $out"
fi
[[ "$out" == *"unknown flow 'rescure'"* ]] || fail "deploy.sh: unclear refusal: $out"
echo "ok: tests/vm/deploy.sh refuses an unknown flow name at once"

# 4. The fault suite cannot pass with nothing to do.
if out=$(cd "$ROOT" && RIVET_FAULT_RUNS=0 cargo test --locked -q --test faults -- --exact seeded_faults_never_corrupt_panic_or_hang 2>&1); then
  fail "the fault suite passed with RIVET_FAULT_RUNS=0"
fi
[[ "$out" == *"RIVET_FAULT_RUNS=0: the suite needs at least"* ]] || fail "fault suite: unclear refusal: $(tail -5 <<<"$out")"
echo "ok: the fault suite refuses RIVET_FAULT_RUNS=0"
echo "PASS harness self-test"
