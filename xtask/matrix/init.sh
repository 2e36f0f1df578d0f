#!/bin/sh
# /init of the kernel-matrix VMs (cargo xtask matrix): loads ram on this kernel, enforces on a
# cgroup, and reports on the serial console in lines starting with RAM-MATRIX, then powers off.
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /sys/fs/cgroup /sys/fs/bpf; mount -t cgroup2 none /sys/fs/cgroup; mount -t bpf bpf /sys/fs/bpf
# As systemd does: the active LSMs (is the BPF LSM among them?) are read from securityfs.
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
echo "RAM-MATRIX families LSMs: $(cat /sys/kernel/security/lsm 2>/dev/null)"
ip link set lo up
# Debian's SCTP, DCCP and L2TP/IP modules, with what they need (xtask matrix adds them per
# kernel, numbered in load order); a module this kernel cannot load is reported as missing.
for m in /modules/*.ko; do [ -f "$m" ] && insmod "$m" 2>/dev/null; done
# Test hosts on lo, outside the addresses ram never learns (loopback, link-local, ...): the
# resolver 10.77.0.1, registry.test's address 10.77.0.2, a spoofed answer's 10.77.0.3, and a
# spoofer's source 10.77.0.4.
for i in 1 2 3 4; do ip addr add 10.77.0.$i/32 dev lo; done
echo "RAM-MATRIX kernel $(cat /proc/sys/kernel/osrelease)"
mkdir /sys/fs/cgroup/t
# In the enforced cgroup: run the rest of the line there.
in_t() { sh -c 'echo $$ > /sys/fs/cgroup/t/cgroup.procs; exec "$@"' in_t "$@"; }
/bin/ram-matrix-peer serve 10.77.0.1 registry.test=10.77.0.2 badid.test=10.77.0.3/badid \
  slow.test=0.0.0.0/silent > /tmp/dns.log 2>&1 &
RUST_LOG=debug /bin/ram --run-dir /run/ram daemon --policy /policy.toml --cgroup /sys/fs/cgroup/t \
  --audit-log /run/audit.log > /tmp/ram.log 2>&1 &
# Bounded: 240 s (software emulation verifies the DNS programs slowly).
i=0; while [ $i -lt 240 ] && ! grep -q "enforcing on" /tmp/ram.log && ! grep -q "ram: error" /tmp/ram.log; do sleep 1; i=$((i+1)); done
grep "probe: " /tmp/ram.log | sed 's/.*probe: /RAM-MATRIX probe /'
grep "instructions verified" /tmp/ram.log | sed 's/.*DEBUG\] /RAM-MATRIX verified /'
if grep -q "enforcing on" /tmp/ram.log; then echo "RAM-MATRIX attached"; else
  grep -v "DEBUG" /tmp/ram.log | tail -40 | sed 's/^/RAM-MATRIX error /'
  echo RAM-MATRIX done; poweroff -f; fi
# Allowed: 127.0.0.1 (allow_cidrs); nothing listens, so "reached" is a refusal by the host.
echo "RAM-MATRIX allowed $(in_t /bin/ram-matrix-peer connect 127.0.0.1 9)"
# Denied: 127.0.0.2 is loopback too, but allow_loopback is off.
echo "RAM-MATRIX denied $(in_t /bin/ram-matrix-peer connect 127.0.0.2 9)"
# The socket gate: a raw socket cannot even be made in the enforced cgroup.
echo "RAM-MATRIX raw-socket $(in_t /bin/ram-matrix-peer raw)"
# Protocols without connect/sendmsg hooks: refused at socket creation in the enforced cgroup
# (compared with the same socket made outside it, which proves the module is there).
for p in sctp dccp l2tp packet; do
  echo "RAM-MATRIX proto-$p $(in_t /bin/ram-matrix-peer socket $p) outside $(/bin/ram-matrix-peer socket $p)"
done
grep "socket families" /tmp/ram.log | sed 's/.*socket families: /RAM-MATRIX families /'
# DNS learning: registry.test's address is denied until the trusted resolver's answer for it.
echo "RAM-MATRIX before-dns $(in_t /bin/ram-matrix-peer connect 10.77.0.2 80)"
echo "RAM-MATRIX resolved $(in_t /bin/ram-matrix-peer query 10.77.0.1 registry.test | grep -v '^port')"
echo "RAM-MATRIX learned $(in_t /bin/ram-matrix-peer connect 10.77.0.2 80)"
# TLS names: a hello naming registry.test (which taught 10.77.0.2) is sent and arrives; one
# naming other.test (no rule allows it) on the same address fails at once, nothing arrives.
/bin/ram-matrix-peer listen 10.77.0.2 443 > /tmp/tls.log 2>&1 &
sleep 0.5
echo "RAM-MATRIX tls-allowed $(in_t /bin/ram-matrix-peer hello 10.77.0.2 443 registry.test)"
echo "RAM-MATRIX tls-other $(in_t /bin/ram-matrix-peer hello 10.77.0.2 443 other.test)"
i=0; while [ $i -lt 50 ] && [ "$(grep -c bytes /tmp/tls.log)" -lt 2 ]; do sleep 0.1; i=$((i+1)); done
echo "RAM-MATRIX tls-far-side $(tr '\n' ' ' < /tmp/tls.log)"
grep "TLS names" /tmp/ram.log | sed 's/.*TLS names: /RAM-MATRIX tls-mechanism /'
# A spoofed answer: the client waits for slow.test (the resolver stays silent) and takes a
# forged answer from 10.77.0.4:53 with the right transaction id; its address stays denied.
in_t /bin/ram-matrix-peer query 10.77.0.1 slow.test --txid 16962 > /tmp/spoofed 2>&1 &
i=0; while [ $i -lt 50 ] && ! grep -q "^port" /tmp/spoofed; do sleep 0.1; i=$((i+1)); done
/bin/ram-matrix-peer spoof 10.77.0.4 "$(sed -n 's/^port //p' /tmp/spoofed)" slow.test 16962 10.77.0.3 > /dev/null
wait $!
echo "RAM-MATRIX spoof-taken $(grep -v '^port' /tmp/spoofed)"
echo "RAM-MATRIX spoofed $(in_t /bin/ram-matrix-peer connect 10.77.0.3 80)"
# A mismatched transaction id from the trusted resolver itself, taken by a careless client.
echo "RAM-MATRIX badid-taken $(in_t /bin/ram-matrix-peer query 10.77.0.1 badid.test --any-id | grep -v '^port')"
echo "RAM-MATRIX badid $(in_t /bin/ram-matrix-peer connect 10.77.0.3 80)"
# The audit log names the learned address and its hostname. Bounded wait (10 s): under
# software emulation the daemon may still be writing; and one line only, the one that counts,
# so that kernel messages on the console have less to cut into.
i=0; while [ $i -lt 100 ] && ! grep -q '"hostname":"registry.test"' /run/audit.log; do sleep 0.1; i=$((i+1)); done
grep '"verdict":"learn"' /run/audit.log | grep '"registry.test"' | head -1 | sed 's/^/RAM-MATRIX audit /'
echo RAM-MATRIX done
poweroff -f
