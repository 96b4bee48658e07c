#!/bin/sh
# /init of the kuvirt demo guest: prints `kuvirt-guest: ...` markers on the console (ttyS0).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /run /tmp /var/run /var/log /mnt/ci /www
mount -t tmpfs tmpfs /run

say() { echo "kuvirt-guest: $*"; }

# Kernel modules, dependencies first (generated at build time from modules.dep).
while read -r mod args; do
    [ -n "$mod" ] && insmod "/lib/modules/$mod" $args 2>/dev/null
done </etc/modules.order
say booted

ip link set lo up

# --- cloud-init data: NoCloud (label cidata) or ConfigDrive (label config-2) ---
json_str() { # json_str KEY FILE: value of "KEY":"value" in a one-line JSON file
    sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$2" | head -n 1
}
md_keys() { # prints metadata-ssh-key=KEY for keys of /tmp/metadata.json not printed before
    json_keys public_keys /tmp/metadata.json | while read -r key; do
        grep -qxF "$key" /tmp/md-keys 2>/dev/null && continue
        echo "$key" >>/tmp/md-keys
        say "metadata-ssh-key=$key"
    done
}
json_keys() { # json_keys OBJECTKEY FILE: string values of the object "OBJECTKEY":{...}, one a line
    tr -d '\n' <"$2" | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*{\([^}]*\)}.*/\1/p" |
        grep -o '"[^"]*"[[:space:]]*:[[:space:]]*"[^"]*"' | sed 's/^"[^"]*"[[:space:]]*:[[:space:]]*"\(.*\)"$/\1/'
}
try_mount() { # try_mount DEV: mounts DEV read-only on /mnt/ci
    mount -t iso9660 -o ro "$1" /mnt/ci 2>/dev/null || mount -t vfat -o ro "$1" /mnt/ci 2>/dev/null
}
find_seed() {
    for label in cidata CIDATA config-2 CONFIG-2; do
        dev=$(findfs "LABEL=$label" 2>/dev/null) && try_mount "$dev" && return 0
    done
    for dev in /dev/vd? /dev/sr? /dev/sd?; do
        [ -b "$dev" ] || continue
        if try_mount "$dev"; then
            [ -f /mnt/ci/meta-data ] || [ -f /mnt/ci/openstack/latest/meta_data.json ] && return 0
            umount /mnt/ci
        fi
    done
    return 1
}
found=0
for attempt in 1 2 3 4 5; do
    if find_seed; then found=1; break; fi
    # SCSI/ATA cdroms may still be probing; disks on virtio-blk are there at once.
    ls /sys/class/scsi_host/ 2>/dev/null | grep -q . || break
    sleep 0.2
done
# A #cloud-config user-data `hostname:` wins over the meta-data one, as in cloud-init.
userdata_hostname() {
    [ -f "$1" ] && head -n 1 "$1" | grep -q '^#cloud-config' || return 0
    sed -n 's/^hostname:[[:space:]]*["'"'"']\{0,1\}\([^"'"'"'[:space:]]*\).*/\1/p' "$1" | head -n 1
}
hostname=
if [ "$found" = 1 ] && [ -f /mnt/ci/meta-data ]; then
    hostname=$(json_str local-hostname /mnt/ci/meta-data)
    [ -n "$hostname" ] || hostname=$(sed -n 's/^local-hostname:[[:space:]]*\([^[:space:]]*\).*/\1/p' /mnt/ci/meta-data | head -n 1)
    uh=$(userdata_hostname /mnt/ci/user-data)
    [ -n "$uh" ] && hostname=$uh
    say "hostname=$hostname"
    if [ -f /mnt/ci/user-data ]; then
        say "userdata-sha256=$(sha256sum /mnt/ci/user-data | cut -d' ' -f1)"
    fi
    json_keys public-keys /mnt/ci/meta-data | while read -r key; do say "ssh-key=$key"; done
    say cloudinit=nocloud
elif [ "$found" = 1 ]; then
    md=/mnt/ci/openstack/latest/meta_data.json
    hostname=$(json_str hostname "$md")
    uh=$(userdata_hostname /mnt/ci/openstack/latest/user_data)
    [ -n "$uh" ] && hostname=$uh
    say "hostname=$hostname"
    if [ -f /mnt/ci/openstack/latest/user_data ]; then
        say "userdata-sha256=$(sha256sum /mnt/ci/openstack/latest/user_data | cut -d' ' -f1)"
    fi
    json_keys public_keys "$md" | while read -r key; do say "ssh-key=$key"; done
    say cloudinit=configdrive
else
    say cloudinit=none
fi
[ -n "$hostname" ] || hostname=kuvirt-guest
hostname "$hostname"

# --- network: DHCP on every ethernet interface ---
for path in /sys/class/net/*; do
    ifc=${path##*/}
    [ "$ifc" = lo ] && continue
    ip link set "$ifc" up
    udhcpc -i "$ifc" -t 5 -T 1 -n -q -s /etc/udhcpc.script >/dev/null 2>&1 ||
        say "dhcp iface=$ifc failed"
done

# IPv6 with kuvirt.dhcp6=1: dhcpcd solicits a router advertisement, then (M flag) DHCPv6.
# The address is a /128; the prefix shown is the on-link route the advertisement installed.
dhcp6=
for arg in $(cat /proc/cmdline); do
    [ "$arg" = kuvirt.dhcp6=1 ] && dhcp6=1
done
if [ -n "$dhcp6" ]; then
    for path in /sys/class/net/*; do
        ifc=${path##*/}
        [ "$ifc" = lo ] && continue
        rm -f "/run/dhcp6.$ifc"
        dhcpcd -f /etc/dhcpcd.conf -c /etc/dhcpcd.hook -1 -6 -t 15 "$ifc" >/dev/null 2>&1
        addr=
        [ -f "/run/dhcp6.$ifc" ] && read -r addr <"/run/dhcp6.$ifc"
        if [ -z "$addr" ]; then
            say "dhcp6 iface=$ifc failed"
            continue
        fi
        prefix=128
        for r in $(ip -6 route show dev "$ifc" | sed -n 's|^\([0-9a-f:]*/[0-9]*\) .*|\1|p'); do
            case "$r" in fe80:*) ;; *) prefix=${r#*/} ;; esac
        done
        gw=$(ip -6 route show default dev "$ifc" | sed -n 's/^default via \([^ ]*\).*/\1/p' | head -n 1)
        say "dhcp6 iface=$ifc ip=$addr/$prefix gw=$gw"
    done
fi

# Metadata service (OpenStack layout): kuvirt.metadata=1 uses 169.254.169.254,
# kuvirt.metadata_url=http://HOST[:PORT] another base URL.
md_base=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    kuvirt.metadata=1) md_base=${md_base:-http://169.254.169.254} ;;
    kuvirt.metadata_url=*) md_base=${arg#kuvirt.metadata_url=} ;;
    esac
done
if [ -n "$md_base" ]; then
    # Not `wget -T`: it crashes Debian's busybox 1.35 wget; `timeout` bounds it instead.
    if timeout 10 wget -q -O /tmp/metadata.json "$md_base/openstack/latest/meta_data.json" 2>/dev/null; then
        say "metadata-hostname=$(json_str hostname /tmp/metadata.json)"
        md_keys
    else
        say "metadata failed"
    fi
fi
# kuvirt.fetch=URL: one HTTP GET, its first line printed (another VM's web server, say).
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    kuvirt.fetch=*)
        url=${arg#kuvirt.fetch=}
        if timeout 10 wget -q -O /tmp/fetched "$url" 2>/dev/null; then
            say "fetch $url -> $(head -n 1 /tmp/fetched)"
        else
            say "fetch $url failed"
        fi
        ;;
    esac
done

# --- services ---
echo "kuvirt-guest $hostname" >/www/index.html
httpd -p 80 -h /www
# acpid in the foreground of a background job, so we can tell when it listens: `ready` must mean
# that a power button press now is seen.
acpid -f -c /etc/acpi -l /var/log/acpid.log &
acpid_pid=$!
i=0
while [ $i -lt 100 ]; do
    ls -l /proc/$acpid_pid/fd 2>/dev/null | grep -q /dev/input/event && break
    sleep 0.1
    i=$((i + 1))
done

say ready
n=0
while :; do
    n=$((n + 1))
    say "heartbeat $n"
    # The metadata service follows the VMI: new SSH keys show up without a reboot.
    if [ -n "$md_base" ] && [ $((n % 3)) = 0 ] &&
        timeout 2 wget -q -O /tmp/metadata.new "$md_base/openstack/latest/meta_data.json" 2>/dev/null; then
        mv /tmp/metadata.new /tmp/metadata.json
        md_keys
    fi
    sleep 1
done
