#!/usr/bin/env bash
# Print the boot timeline of one ramdisk boot (or one agent run) from its console or log:
# the /init phases (`rivet-timeline PHASE UPTIME` lines) and the agent's (`boot timeline`
# log lines with phase= and uptime=), in order, with the time each phase took.
#   usage: scripts/boot-timeline.sh LOG [TITLE]
# Times are seconds since the kernel started (the guest's clock in a VM); "agent" is the time
# since the agent process started.
set -euo pipefail
log=$1 title=${2:-$1}
[[ -r "$log" ]] || { echo "boot-timeline: cannot read $log" >&2; exit 2; }
tr -d '\r' <"$log" | sed 's/\x1b\[[0-9;]*m//g' | awk -v title="$title" '
  # /init lines; the first may share its line with the firmware'"'"'s screen escapes
  match($0, /rivet-timeline [a-z_0-9]+ [0-9.]+/) {
    split(substr($0, RSTART, RLENGTH), f, " ")
    if (!seen[f[2]]++) { n++; ph[n] = "init: " f[2]; up[n] = f[3] + 0; ag[n] = "" }
    next
  }
  /boot timeline/ {
    p = ""; u = ""; a = ""
    for (i = 1; i <= NF; i++) {
      if ($i ~ /^phase=/) { p = substr($i, 7); gsub(/"/, "", p) }
      else if ($i ~ /^uptime=/) u = substr($i, 8)
      else if ($i ~ /^since_agent_start_ms=/) a = substr($i, 22)
    }
    if (p != "" && u != "" && !seen[p]++) { n++; ph[n] = "agent: " p; up[n] = u + 0; ag[n] = a }
  }
  END {
    if (n == 0) { print "boot timeline (" title "): no timeline lines"; exit 0 }
    # insertion sort by uptime: the agent and /init lines interleave on a console
    for (i = 2; i <= n; i++) for (j = i; j > 1 && up[j] < up[j-1]; j--) {
      t = up[j]; up[j] = up[j-1]; up[j-1] = t; t = ph[j]; ph[j] = ph[j-1]; ph[j-1] = t
      t = ag[j]; ag[j] = ag[j-1]; ag[j-1] = t
    }
    printf "boot timeline (%s)\n  %-28s %10s %9s %10s\n", title, "phase", "uptime s", "step s", "agent ms"
    for (i = 1; i <= n; i++)
      printf "  %-28s %10.3f %9.3f %10s\n", ph[i], up[i], (i > 1 ? up[i] - up[i-1] : up[i]), ag[i]
  }'
