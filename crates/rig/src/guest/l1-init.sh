#!/bin/busybox sh
# /init of the rig's L1 guest (QEMU TCG, AMD CPU with SVM). Loads kvm-amd,
# runs the scenario script QEMU passes through fw_cfg (opt/rig/scenario),
# and powers off. Prints `RIG-L1 key=value` markers.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
# A home, as a login would give: agentvm keeps approvals and agent homes
# under it.
export HOME=/root
mkdir -p "$HOME"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Pseudo-terminals, for scenarios that run `agentvm shell` under tmux.
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
echo "RIG-L1 up=$(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /etc/rig/modules); do
  insmod "/lib/modules/$m.ko" 2>/tmp/insmod.err || echo "RIG-L1 insmod_failed=$m $(cat /tmp/insmod.err)"
done
if [ -c /dev/kvm ]; then echo "RIG-L1 kvm=1"; else echo "RIG-L1 kvm=0"; fi
S=/sys/firmware/qemu_fw_cfg/by_name/opt/rig/scenario/raw
if [ -r "$S" ]; then
  cp "$S" /tmp/scenario.sh
  echo "RIG-L1 ready=$(cut -d' ' -f1 /proc/uptime)"
  sh /tmp/scenario.sh
else
  echo "RIG-L1 error=no scenario in fw_cfg"
fi
echo "RIG-L1 done=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
