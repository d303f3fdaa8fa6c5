#!/bin/sh
# Installs what `npm run build:native` needs on Debian 12 (bookworm): clang/llvm for the BPF object,
# bpftool for vmlinux.h and the skeleton, libbpf 1.1 + libelf + zlib to link the addon, make/g++/python3
# for node-gyp. Idempotent and non-interactive: apt runs only when a package is missing.
set -eu

PACKAGES="clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev pkg-config make g++ python3"

missing=""
for p in $PACKAGES; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done

if [ -n "$missing" ]; then
	echo "native/setup.sh: installing$missing"
	SUDO=""
	if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
	$SUDO apt-get update -qq
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends $missing
else
	echo "native/setup.sh: build dependencies present"
fi

if [ ! -r /sys/kernel/btf/vmlinux ]; then
	echo "native/setup.sh: warning: /sys/kernel/btf/vmlinux missing: the build needs a kernel with CONFIG_DEBUG_INFO_BTF=y" >&2
fi
