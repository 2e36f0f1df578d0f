#!/bin/sh
# /init of the kernel-matrix VMs (cargo xtask matrix): loads ram on this kernel, enforces on a
# cgroup, and reports on the serial console in lines starting with RAM-MATRIX, then powers off.
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /sys/fs/cgroup /sys/fs/bpf; mount -t cgroup2 none /sys/fs/cgroup; mount -t bpf bpf /sys/fs/bpf
ip link set lo up
echo "RAM-MATRIX kernel $(cat /proc/sys/kernel/osrelease)"
mkdir /sys/fs/cgroup/t
RUST_LOG=debug /bin/ram --run-dir /run/ram daemon --policy /policy.toml --cgroup /sys/fs/cgroup/t > /tmp/ram.log 2>&1 &
# Bounded: 240 s (software emulation verifies the DNS programs slowly).
i=0; while [ $i -lt 240 ] && ! grep -q "enforcing on" /tmp/ram.log && ! grep -q "ram: error" /tmp/ram.log; do sleep 1; i=$((i+1)); done
grep "instructions verified" /tmp/ram.log | sed 's/.*DEBUG\] /RAM-MATRIX verified /'
if grep -q "enforcing on" /tmp/ram.log; then echo "RAM-MATRIX attached"; else
  grep -v "DEBUG" /tmp/ram.log | tail -40 | sed 's/^/RAM-MATRIX error /'; fi
# Allowed: 127.0.0.1 (allow_cidrs); nothing listens, so "reached" is a refusal by the host.
sh -c 'echo $$ > /sys/fs/cgroup/t/cgroup.procs; nc 127.0.0.1 9 </dev/null' >/tmp/a 2>&1
echo "RAM-MATRIX allowed $(cat /tmp/a)"
# Denied: 127.0.0.2 is loopback too, but allow_loopback is off.
sh -c 'echo $$ > /sys/fs/cgroup/t/cgroup.procs; nc 127.0.0.2 9 </dev/null' >/tmp/b 2>&1
echo "RAM-MATRIX denied $(cat /tmp/b)"
echo RAM-MATRIX done
poweroff -f
