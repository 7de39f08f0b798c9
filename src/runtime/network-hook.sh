#!/bin/sh
# OCI createRuntime hook: wires a sandbox's network namespace to the host. runc runs it after
# the container's namespaces exist, both at `runc run` and at `runc restore` (CRIU restores the
# network namespace empty), with the container state (JSON, holding the init's pid) on stdin.
# Arguments: HOST_INTERFACE ADDRESS GATEWAY
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
host_if="$1"; address="$2"; gateway="$3"
# The state is one line of JSON; take the pid with shell builtins (no extra process).
IFS= read -r state || true
pid=${state#*\"pid\":}
pid=${pid# }
pid=${pid%%[!0-9]*}
[ -n "$pid" ] || { echo "network hook: no pid in the container state" >&2; exit 1; }
# (a link left by an earlier attempt was removed by the agent before this run)
ip link add "$host_if" type veth peer name eth0 netns "/proc/$pid/ns/net"
# No IPv6 on the link, on either side, before it comes up: a link-local address on the host
# side would be a way to the host's services that IPv4's rules do not see.
echo 1 > "/proc/sys/net/ipv6/conf/$host_if/disable_ipv6"
ip -batch - <<BATCH
addr add $gateway/32 dev $host_if
link set $host_if up
route replace $address/32 dev $host_if
BATCH
# Inside (one process): /proc/sys/net is the namespace of whoever writes it, hence nsenter.
# Loopback keeps ::1.
nsenter -t "$pid" -n sh -c '
  echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6
  echo "0 2147483647" > /proc/sys/net/ipv4/ping_group_range
  exec ip -batch -
' <<BATCH
link set lo up
addr add $address/32 dev eth0
link set eth0 up
route add $gateway dev eth0 scope link
route add default via $gateway dev eth0
BATCH
