#!/usr/bin/env bash
# Builds (once) the Debian 12 guest that the NUMA and container tests boot
# under QEMU with two NUMA nodes (tests/numaguest.py): an ext4 image with
# Debian's own kernel, systemd, numactl, what the agent's package needs, and
# Debian 12's container runtimes (podman with crun and runc, docker.io,
# docker-compose), plus that kernel and its initrd beside it. Cached outside
# the repo; prints the directory.
#
# At boot the guest mounts the 9p share tagged "hpa" at /mnt/hpa and runs
# /mnt/hpa/run.sh as root (hpa-guest.service), writing its output to
# /mnt/hpa/run.log, then powers off. Nothing else runs there.
set -euo pipefail
# $HOME may be unset (env -i, a unit): the home directory of the user, then
CACHE="${HUGEPAGE_AGENT_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/hugepage-agent}"
VERSION=2  # bump when the package list or the boot unit changes
OUT="$CACHE/guest-bookworm-v$VERSION"
INCLUDE=linux-image-amd64,initramfs-tools,systemd,systemd-sysv,udev,kmod,dbus,numactl,procps,\
python3,python3-pydbus,python3-gi,python3-pyudev,libgomp1,libstdc++6,curl,ca-certificates,\
podman,crun,runc,conmon,catatonit,netavark,aardvark-dns,docker.io,containerd,docker-compose,apparmor,\
iptables
if [[ -s "$OUT/guest.img" && -s "$OUT/vmlinuz" && -s "$OUT/initrd.img" ]]; then
    echo "$OUT"
    exit 0
fi
mirror=$(bash "$(dirname "$0")/debian-mirror.sh")
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/guest.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
echo "guest: debootstrap bookworm with its kernel and container runtimes from $mirror" \
    "(about 5 minutes)" >&2
debootstrap --variant=minbase --include="$INCLUDE" bookworm "$root" "$mirror" >"$work/log" 2>&1 \
    || { tail -n 30 "$work/log" >&2; exit 1; }
rm -f "$root"/var/cache/apt/archives/*.deb
chroot "$root" passwd -d root >/dev/null
echo 'hpa-guest' >"$root/etc/hostname"
printf '/dev/vda / ext4 rw 0 1\n' >"$root/etc/fstab"
printf '9p\n9pnet\n9pnet_virtio\n' >"$root/etc/modules-load.d/hpa-9p.conf"
cat >"$root/etc/systemd/system/hpa-guest.service" <<'EOF'
[Unit]
Description=Run the test scenario from the host's share, then power off
After=multi-user.target dbus.service systemd-modules-load.service
Wants=dbus.service

[Service]
Type=oneshot
ExecStartPre=/bin/mkdir -p /mnt/hpa
ExecStartPre=/bin/mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 hpa /mnt/hpa
ExecStart=/bin/sh -c '/bin/sh /mnt/hpa/run.sh >/mnt/hpa/run.log 2>&1; echo $? >/mnt/hpa/run.rc'
ExecStopPost=/bin/systemctl --no-block poweroff
TimeoutStartSec=infinity
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/hpa-guest.service \
    "$root/etc/systemd/system/multi-user.target.wants/hpa-guest.service"
# Nothing the scenario does not need: no getty waiting on the console.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/initrd.img"
mkfs.ext4 -q -F -L hpa-guest -d "$root" "$work/guest.img" 6G
mkdir -p "$OUT.tmp"
mv "$work/guest.img" "$work/vmlinuz" "$work/initrd.img" "$OUT.tmp/"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "$OUT"
