#!/bin/sh
# udhcpc event script of the kuvirt demo guest: applies the lease and prints it on the console.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    prefix=$mask
    if [ -z "$prefix" ]; then
        prefix=0
        for octet in $(echo "$subnet" | tr . ' '); do
            while [ "$octet" -gt 0 ]; do
                prefix=$((prefix + (octet & 1)))
                octet=$((octet >> 1))
            done
        done
    fi
    ip -4 addr flush dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    ip -4 addr add "$ip/$prefix" dev "$interface"
    gw=
    for r in $router; do
        [ -z "$gw" ] && gw=$r && ip -4 route add default via "$r" dev "$interface"
    done
    : >/etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    line="kuvirt-guest: dhcp iface=$interface ip=$ip/$prefix gw=$gw dns=$(echo $dns | tr ' ' ,)"
    [ -n "$boot_file" ] && line="$line boot=$boot_file"
    [ -n "$tftp" ] && line="$line tftp=$tftp"
    [ -n "$siaddr" ] && [ "$siaddr" != 0.0.0.0 ] && line="$line siaddr=$siaddr"
    [ -n "$ntpsrv" ] && line="$line ntp=$(echo $ntpsrv | tr ' ' ,)"
    [ -n "$hostname" ] && line="$line hostname=$hostname"
    [ -n "$mtu" ] && line="$line mtu=$mtu"
    read -r mac <"/sys/class/net/$interface/address" && line="$line mac=$mac"
    echo "$line" >/dev/console
    ;;
leasefail|nak)
    ;;
esac
exit 0
