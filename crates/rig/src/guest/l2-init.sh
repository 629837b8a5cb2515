#!/bin/busybox sh
# The rig's init in L2, appended to agentvm's default image and chosen with
# rdinit=/rig/init (the image's own /init is the guest agent). Prints
# `RIG-L2 key=value` markers on the serial console for the tests to parse.
# The kernel command line picks what it does: rig.mode=report (default)
# reports what the guest sees and powers off; rig.mode=panic loads the
# modules and exits, so the kernel panics; rig.mode=bench powers off at
# once (boot-time benchmark; with rig.dmesg=1 it prints the kernel's log
# first, `RIG-DMESG` lines); rig.mode=net asks for a DHCP lease on eth0,
# resolves rig.host (busybox's nslookup: the static wget cannot resolve),
# fetches http://ADDRESS:rig.port/ and http://rig.denied:rig.port/ (which
# must fail), and powers off. The modules are the image's
# own, loaded from the list the agent reads.
echo "RIG-L2 init=start"
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mode=report
for a in $(cat /proc/cmdline); do
  case "$a" in
    rig.mode=*) mode="${a#rig.mode=}" ;;
    rig.host=*) host="${a#rig.host=}" ;;
    rig.port=*) port="${a#rig.port=}" ;;
    rig.denied=*) denied="${a#rig.denied=}" ;;
    rig.halt=*) halt="${a#rig.halt=}" ;;
    rig.dmesg=*) dmesg="${a#rig.dmesg=}" ;;
  esac
done
echo "RIG-L2 mode=$mode"
echo "RIG-L2 uptime_init=$(cut -d' ' -f1 /proc/uptime)"
if [ "$mode" = bench ]; then
  if [ "$dmesg" = 1 ]; then dmesg | sed 's/^/RIG-DMESG /'; fi
  # A VMM without ACPI power-off (Firecracker) exits on a reset instead.
  if [ "$halt" = reboot ]; then reboot -f; fi
  poweroff -f
fi

for m in $(cat /etc/agentvm/modules); do
  insmod "$m" 2>/tmp/insmod.err || echo "RIG-L2 insmod_failed=$m $(cat /tmp/insmod.err)"
done
echo "RIG-L2 uptime_modules=$(cut -d' ' -f1 /proc/uptime)"
for d in /sys/bus/platform/drivers/pvpanic-mmio/*:*; do
  [ -e "$d" ] && echo "RIG-L2 pvpanic=${d##*/}"
done

if [ "$mode" = net ]; then
  echo "RIG-L2 links=$(ip -o link | cut -d: -f2 | tr -d ' ' | tr '\n' ' ')"
  ip link set lo up
  ip link set eth0 up
  # -s /bin/true: report the lease, configure nothing (done below by hand).
  udhcpc -i eth0 -n -q -t 5 -T 2 -s /bin/true >/tmp/dhcp.out 2>&1
  echo "RIG-L2 dhcp_rc=$?"
  echo "RIG-L2 dhcp=$(grep -o 'lease of [0-9.]* obtained' /tmp/dhcp.out)"
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
  echo "nameserver 10.0.2.3" > /etc/resolv.conf
  addr=$(nslookup "$host" 2>/dev/null | sed -n 's/^Address: *\([0-9.]*\)$/\1/p' | tail -n 1)
  echo "RIG-L2 resolved=$addr"
  echo "RIG-L2 fetch=$(timeout 10 wget -q -O - "http://$addr:$port/" 2>&1 | head -c 200 | tr '\n' ' ')"
  timeout 10 wget -q -O /dev/null "http://$denied:$port/" >/dev/null 2>&1
  echo "RIG-L2 denied_rc=$?"
  echo "RIG-L2 done=1"
  poweroff -f
fi

if [ "$mode" = panic ]; then
  echo "RIG-L2 panic=init-exits"
  exit 1
fi

echo "RIG-L2 kernel=$(uname -r)"
echo "RIG-L2 cmdline=$(cat /proc/cmdline)"
echo "RIG-L2 memtotal_kib=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
echo "RIG-L2 cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "RIG-L2 nproc=$(nproc)"
echo "RIG-L2 cpus_online=$(cat /sys/devices/system/cpu/online)"
echo "RIG-L2 clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"

acpi=$(dmesg | grep -i -E 'acpi.*(error|warn)|ACPI BIOS Error')
echo "RIG-L2 acpi_errors=$(printf '%s' "$acpi" | grep -c .)"
printf '%s\n' "$acpi" | while read -r l; do
  [ -n "$l" ] && echo "RIG-L2 acpi_msg=$l"
done
for d in /sys/bus/acpi/devices/*; do
  case "${d##*/}" in LNRO*|QEMU*|PNP0501*|ACPI0010*) echo "RIG-L2 acpi_dev=${d##*/}" ;; esac
done

for d in /sys/bus/virtio/devices/*; do
  [ -e "$d" ] || continue
  drv=$(readlink "$d/driver")
  echo "RIG-L2 virtio=${d##*/} device=$(cat "$d/device") vendor=$(cat "$d/vendor") driver=${drv##*/}"
done
R=/sys/devices/virtual/misc/hw_random
echo "RIG-L2 rng_current=$(cat $R/rng_current 2>/dev/null)"
echo "RIG-L2 rng_available=$(cat $R/rng_available 2>/dev/null)"
echo "RIG-L2 hwrng=$(timeout 10 head -c 16 /dev/hwrng 2>/dev/null | od -An -tx1 | tr -d ' \n')"

# Kernel messages at warning level or worse (quiet hides them on the
# console): counted, and the first error-level ones shown. Kept short: a
# long burst of tty output is what a lost serial interrupt would stall.
echo "RIG-L2 kmsg_warnings=$(dmesg -r | grep -c '^<4>')"
echo "RIG-L2 kmsg_errors=$(dmesg -r | grep -c '^<[0-3]>')"
dmesg -r | grep '^<[0-3]>' | head -n 12 | while read -r l; do
  echo "RIG-L2 kmsg=$l"
done
dmesg -r | grep '^<4>' | grep -v -E '^<4>\[ *[0-9.]*\] ( |[A-Z0-9]{2,3}: |Code:|Call Trace|<|-+\[)' | head -n 8 | while read -r l; do
  echo "RIG-L2 kmsg_warn=$l"
done
echo "RIG-L2 uptime_done=$(cut -d' ' -f1 /proc/uptime)"
echo "RIG-L2 done=1"
poweroff -f
