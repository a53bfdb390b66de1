#!/usr/bin/env bash
# lab/nat.sh - a NAT lab of Linux network namespaces (root only).
#
# Builds, from network namespaces joined by veth pairs:
#
#   PREFIX-boot (172.16.0.2)  ─┐
#                              ├─ PREFIX-pub: bridge "br0", the "public" segment 172.16.0.0/24
#   PREFIX-ra  wan 172.16.0.11 ┤   PREFIX-rb wan 172.16.0.12
#      lan 10.0.1.1/24         │      lan 10.0.2.1/24
#   PREFIX-ha  10.0.1.2        │   PREFIX-hb  10.0.2.2
#
# Host A sits behind router A, host B behind router B; a bootstrap/relay node goes into
# PREFIX-boot. Each router is one of these NAT types (iptables inside the router's namespace):
#
#   none         routed, no NAT: the host's 10.0.x.2 is reachable from the public segment
#   cone         port-restricted cone: plain MASQUERADE (keeps the source port, conntrack
#                filters inbound by remote address and port)
#   symmetric    MASQUERADE --random-fully: a fresh random external port per destination
#   udp-blocked  MASQUERADE, and the router drops all forwarded UDP (only TCP gets out)
#
# Private ranges only (172.16.0.0/24, 10.0.1.0/24, 10.0.2.0/24), all inside the lab's own
# namespaces: nothing is connected to the host's namespace, so there is no route to the real
# network. Namespaces are named PREFIX-*, so parallel runs with different prefixes do not collide.
#
# Usage:
#   lab/nat.sh up TYPE_A[:TYPE_B] [PREFIX]   build (TYPE_B defaults to TYPE_A); PREFIX defaults
#                                            to $NATLAB_PREFIX or "nl<random>"; prints
#                                            shell-style KEY=VALUE lines (PREFIX, NS_BOOT,
#                                            BOOT_IP, NS_A, A_IP, NAT_A, NS_B, B_IP, NAT_B,
#                                            A_WAN, B_WAN)
#   lab/nat.sh down PREFIX                   kill (by PID) every process in PREFIX-* namespaces
#                                            and delete them; idempotent, safe to repeat
#   lab/nat.sh list                          namespaces that look like lab namespaces
#
# Run a program on a host:  ip netns exec "$NS_A" ferry up ...
# Example:
#   eval "$(sudo lab/nat.sh up cone:symmetric)"; ...; sudo lab/nat.sh down "$PREFIX"
set -euo pipefail

die() { echo "nat.sh: $*" >&2; exit 1; }

NAMES=(boot pub ra ha rb hb)

nat_types="none cone symmetric udp-blocked"

check_root() {
    [ "$(id -u)" = 0 ] || die "root only (network namespaces and iptables)"
    command -v ip >/dev/null || die "iproute2 missing (apt-get install -y iproute2)"
}

down() {
    local p=$1
    [ -n "$p" ] || die "down needs PREFIX"
    for n in "${NAMES[@]}"; do
        local ns="$p-$n"
        ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$ns" || continue
        # Processes started inside the lab: kill them by PID, then the namespace.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -TERM "$pid" 2>/dev/null || true
        done
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
            sleep 0.1
        done
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
}

router() {
    # router NS_SUFFIX HOST_SUFFIX WAN_IP LAN_NET(10.0.N) TYPE
    local p=$1 r=$2 h=$3 wan=$4 lan=$5 type=$6
    local rns="$p-$r" hns="$p-$h"
    ip netns add "$rns"
    ip netns add "$hns"
    ip -n "$rns" link set lo up
    ip -n "$hns" link set lo up
    # WAN side: veth into the public bridge.
    ip -n "$rns" link add wan type veth peer name "$r" netns "$p-pub"
    ip -n "$p-pub" link set "$r" master br0 up
    ip -n "$rns" addr add "$wan/24" brd + dev wan
    ip -n "$rns" link set wan up
    # LAN side: veth to the host.
    ip -n "$rns" link add lan type veth peer name eth0 netns "$hns"
    ip -n "$rns" addr add "$lan.1/24" brd + dev lan
    ip -n "$rns" link set lan up
    ip -n "$hns" addr add "$lan.2/24" brd + dev eth0
    ip -n "$hns" link set eth0 up
    ip -n "$hns" route add default via "$lan.1"
    ip netns exec "$rns" sysctl -qw net.ipv4.ip_forward=1
    local ipt=(ip netns exec "$rns" iptables)
    case $type in
    none) ;;
    cone)
        "${ipt[@]}" -t nat -A POSTROUTING -o wan -j MASQUERADE
        ;;
    symmetric)
        "${ipt[@]}" -t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully
        ;;
    udp-blocked)
        "${ipt[@]}" -t nat -A POSTROUTING -o wan -j MASQUERADE
        "${ipt[@]}" -A FORWARD -p udp -j DROP
        ;;
    esac
    if [ "$type" != none ]; then
        # Behind a NAT only replies come in (conntrack), as on a home router.
        "${ipt[@]}" -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        "${ipt[@]}" -A FORWARD -i wan -o lan -j DROP
        # The router itself takes nothing unsolicited from the WAN either. This matters for hole
        # punching: a packet that reaches the router before the host's own first packet out
        # would otherwise leave a conntrack entry (to the router) that clashes with the host's
        # mapping, and MASQUERADE would pick another port.
        "${ipt[@]}" -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        "${ipt[@]}" -A INPUT -i wan -j DROP
    fi
}

up() {
    local topo=$1 p=${2:-${NATLAB_PREFIX:-nl$(printf '%04x' $((RANDOM * 2 + RANDOM % 2)))}}
    local ta=${topo%%:*} tb=${topo#*:}
    for t in "$ta" "$tb"; do
        case " $nat_types " in *" $t "*) ;; *) die "unknown NAT type '$t' (one of: $nat_types)";; esac
    done
    [ ${#p} -le 10 ] || die "PREFIX at most 10 characters"
    case $p in *[!A-Za-z0-9]*) die "PREFIX: letters and digits only";; esac
    if ip netns list | awk '{print $1}' | grep -q -- "^$p-"; then
        die "namespaces $p-* exist already (lab/nat.sh down $p)"
    fi
    trap 'down "$p"' ERR
    ip netns add "$p-pub"
    ip -n "$p-pub" link set lo up
    ip -n "$p-pub" link add br0 type bridge
    ip -n "$p-pub" link set br0 up
    ip netns add "$p-boot"
    ip -n "$p-boot" link set lo up
    ip -n "$p-boot" link add eth0 type veth peer name boot netns "$p-pub"
    ip -n "$p-pub" link set boot master br0 up
    ip -n "$p-boot" addr add 172.16.0.2/24 brd + dev eth0
    ip -n "$p-boot" link set eth0 up
    router "$p" ra ha 172.16.0.11 10.0.1 "$ta"
    router "$p" rb hb 172.16.0.12 10.0.2 "$tb"
    # A routed (no NAT) LAN is reachable from the public segment.
    local pub_ns=("$p-boot" "$p-ra" "$p-rb")
    if [ "$ta" = none ]; then
        for ns in "${pub_ns[@]}"; do
            [ "$ns" = "$p-ra" ] || ip -n "$ns" route add 10.0.1.0/24 via 172.16.0.11
        done
    fi
    if [ "$tb" = none ]; then
        for ns in "${pub_ns[@]}"; do
            [ "$ns" = "$p-rb" ] || ip -n "$ns" route add 10.0.2.0/24 via 172.16.0.12
        done
    fi
    trap - ERR
    # External addresses the public segment sees for each host.
    local aw=172.16.0.11 bw=172.16.0.12
    [ "$ta" = none ] && aw=10.0.1.2
    [ "$tb" = none ] && bw=10.0.2.2
    cat <<EOF
PREFIX=$p
NS_BOOT=$p-boot
BOOT_IP=172.16.0.2
NS_A=$p-ha
A_IP=10.0.1.2
NAT_A=$ta
A_WAN=$aw
NS_B=$p-hb
B_IP=10.0.2.2
NAT_B=$tb
B_WAN=$bw
EOF
}

cmd=${1:-}
case $cmd in
up)
    check_root
    [ $# -ge 2 ] || die "usage: nat.sh up TYPE_A[:TYPE_B] [PREFIX]"
    up "$2" "${3:-}"
    ;;
down)
    check_root
    [ $# -ge 2 ] || die "usage: nat.sh down PREFIX"
    down "$2"
    ;;
list)
    ip netns list | awk '{print $1}' | grep -E -- '-(boot|pub|ra|ha|rb|hb)$' || true
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    [ -z "$cmd" ] || exit 2
    ;;
esac
