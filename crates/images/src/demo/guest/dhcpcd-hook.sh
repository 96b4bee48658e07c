#!/bin/sh
# dhcpcd hook of the kuvirt demo guest (IPv6 only): records the DHCPv6 address for /init and
# adds the name servers to resolv.conf. Routes and addresses are dhcpcd's own work.
case "$reason" in
BOUND6|REBOOT6|RENEW6|REBIND6|INFORM6)
    [ -n "$new_dhcp6_ia_na1_ia_addr1" ] && echo "$new_dhcp6_ia_na1_ia_addr1" >"/run/dhcp6.$interface"
    for d in $new_dhcp6_name_servers; do
        grep -q "^nameserver $d\$" /etc/resolv.conf 2>/dev/null || echo "nameserver $d" >>/etc/resolv.conf
    done
    ;;
esac
exit 0
