#!/bin/bash
# Build the lab's base root filesystem into DIR (which must not exist yet).
#
#   lab/build-image.sh DIR [SUITE]     (SUITE: bookworm, the default, or trixie)
#
# lab/lab keys its image cache on a hash of this file: change anything here and
# the next `lab/lab up` builds a new image. The image holds nothing specific to
# one host or to one lab checkout: hostname, machine-id, addresses, /etc/hosts,
# SSH host keys and authorized_keys are written into each host's overlay by
# lab/lab before the host's first boot. No apt proxy is configured here: the
# project's DAG configures it from its inventory.
set -euo pipefail

target=${1:?usage: build-image.sh DIR [SUITE]}
suite=${2:-bookworm}
mirror=http://deb.debian.org/debian
packages=(
  systemd systemd-sysv dbus openssh-server iproute2 python3 python3-venv sudo
  ca-certificates curl procps less netcat-openbsd locales iputils-ping netbase
)

if [ -e "$target" ]; then
  echo "build-image.sh: $target already exists" >&2
  exit 1
fi

debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
  "$suite" "$target" "$mirror"

put() {  # put PATH MODE  (content on stdin)
  install -D -m "$2" /dev/stdin "$target$1"
}

put /etc/apt/sources.list 0644 <<SRC
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SRC

# Locales: C.UTF-8 is built in; en_US.UTF-8 for tools that insist on it.
sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$target/etc/locale.gen"
chroot "$target" locale-gen
echo 'LANG=C.UTF-8' | put /etc/default/locale 0644

# SSH: key login for root only, one ed25519 host key that lab/lab provides.
rm -f "$target"/etc/ssh/ssh_host_*
put /etc/ssh/sshd_config.d/10-pgha-lab.conf 0644 <<'SSHD'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
SSHD
install -d -m 0700 "$target/root/.ssh"

# Identity: left blank so no two hosts share it (lab/lab fills it per host).
: > "$target/etc/machine-id"
ln -sf /etc/machine-id "$target/var/lib/dbus/machine-id"
echo localhost | put /etc/hostname 0644
put /etc/hosts 0644 <<'HOSTS'
127.0.0.1 localhost
::1       localhost ip6-localhost ip6-loopback
HOSTS
# No DNS on the lab network: names come from /etc/hosts.
echo '# pgha lab: no DNS server; lab hosts are listed in /etc/hosts' \
  | put /etc/resolv.conf 0644

# Network: systemd-networkd; each host's static address comes from
# /etc/systemd/network/10-host0.network written by lab/lab.
chroot "$target" systemctl enable systemd-networkd.service
# Unattended apt runs would hold the dpkg lock while the DAG installs packages.
chroot "$target" systemctl mask apt-daily.timer apt-daily-upgrade.timer

# Small image: no package caches or stale indexes (apt-get update comes first).
chroot "$target" apt-get clean
rm -rf "$target"/var/lib/apt/lists/* "$target"/var/log/*.log "$target"/var/cache/debconf/*-old
echo "pgha-lab base image, built $(date -u +%FT%TZ)" | put /etc/pgha-lab-image 0644
