#!/bin/sh
# Installs the package with a plain `dpkg -i` on a copy-on-write view of this host, then follows
# docs/OPERATORS.md as an operator would: a password file and a keystore written as the kestrel
# user, and `kestrel node --config /etc/kestrel/config.toml` run as kestrel.
#
#   unshare --mount --net --propagation private sh host_view_install.sh SCRATCH DEB GENESIS
#
# The view is an overlay of / whose writes go to a tmpfs in this mount namespace, so the host
# itself is never changed (tests/deb checks). --net: the node's ports are in a namespace of their
# own. Prints what the test checks: the passwd line, the directories' owners and modes, keygen's
# output, the node's log.
set -eu
scratch=$1 deb=$2 genesis=$3
mount -t tmpfs tmpfs "$scratch"
mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
root=$scratch/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$root"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t tmpfs tmpfs "$root/tmp"
cp "$deb" "$root/tmp/kestrel.deb"
cp "$genesis" "$root/tmp/genesis.json"
ip link set lo up
chroot "$root" sh -eu -c '
  dpkg -i /tmp/kestrel.deb >/dev/null
  dpkg -i /tmp/kestrel.deb >/dev/null   # again: idempotent
  echo "passwd: $(getent passwd kestrel)"
  stat -c "dir: %n %U:%G %a" /etc/kestrel /var/lib/kestrel
  install -o kestrel -g kestrel -m 0600 /tmp/genesis.json /etc/kestrel/genesis.json
  runuser -u kestrel -- sh -c "umask 077; head -c 32 /dev/urandom | base64 > /etc/kestrel/password.txt"
  runuser -u kestrel -- kestrel keygen --out /etc/kestrel/keystore.json \
    --password-file /etc/kestrel/password.txt --scrypt-light
  stat -c "key: %n %U:%G %a" /etc/kestrel/keystore.json /etc/kestrel/password.txt
  if systemd-analyze verify kestrel-validator.service; then echo "verify: ok"; fi
  runuser -u kestrel -- timeout --preserve-status -s INT 5 kestrel node --config /etc/kestrel/config.toml \
    >/tmp/node.log 2>&1 && echo "node: exit 0" || echo "node: exit $?"
  sed "s/\x1b\[[0-9;]*m//g" /tmp/node.log | sed "s/^/log: /"
'
