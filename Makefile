# ironvirt: the two commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help run stop test chaos bench bench-ui bench-api bench-handler bench-images bench-density fuzz-specs deps build-k8s guest build lint crdgen clean-state ui

help: ## Show the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# make run NODES=2: nodes node-1 … node-N, each in namespaces of its own with its own libvirtd and handler.
NODES ?= 1
SEED ?= 1
OPS ?= 500

run: ## Install what is missing, build, start the control plane, libvirt and ironvirt; leave them running (NODES=N: N nodes in namespaces)
	@NODES=$(NODES) hack/run.sh

stop: ## Stop everything `make run` (or an interrupted `make test`) started, nodes' namespaces, bridge and mounts included
	@hack/stop.sh

test: ## Install what is missing, build, and run every test (unit and against the real test bed)
	@hack/test.sh

bench: ## Benchmarks (operator: 100 and 1000 VMs; handler) on a test bed of their own
	@hack/bench.sh

bench-ui: ## Web console benchmark only (headless Chromium): first load, keypress to echo in the page vs without a browser
	@BENCH=ui hack/bench.sh

bench-api: ## ironvirt-api benchmark only: console throughput and latency via kube-apiserver, RSS with 50 consoles
	@BENCH=api hack/bench.sh

bench-handler: ## Handler benchmark only: RSS, Scheduled-to-Running latency, console throughput
	@BENCH=handler hack/bench.sh

bench-images: ## containerDisk benchmark only: cold pull + start, warm start from the cache, hostDisk start
	@BENCH=images hack/bench.sh

bench-density: ## Density benchmark only: 50 TCG guests on one node (DENSITY_VMS=N), latency to Running and to the guest's marker, memory per VM
	@BENCH=density hack/bench.sh

chaos: ## Seeded chaos run on a bed of its own: lifecycle operations, migrations, containerDisk VMs; operator, handlers, libvirtds, ironvirt-api, kube-apiserver and etcd killed or stopped; then the invariants (SEED=1 OPS=500)
	@SEED=$(SEED) OPS=$(OPS) hack/chaos.sh

fuzz-specs: ## 10,000 generated VM/VMI specs through validation, defaulting, domain XML and libvirt's schema (no test bed)
	IRONVIRT_SPEC_CASES=$${IRONVIRT_SPEC_CASES:-10000} cargo test -p ironvirt-tests --test generated_specs -- --nocapture

deps: ## Install the Debian packages the test bed needs
	@hack/install-deps.sh

build-k8s: ## Build etcd, kube-apiserver, kube-controller-manager and kubectl (cached)
	@hack/build-k8s.sh

guest: ## Build the test guest (cached); prints its directory
	@hack/build-guest.sh

build: ## cargo build the workspace (and link target/debug/kubectl-ironctl, the kubectl plugin)
	cargo build --workspace
	ln -sfn ironctl target/debug/kubectl-ironctl

ui: ## Rebuild the web console (cli/ui/dist) from its TypeScript with npm ci + esbuild
	@hack/ui.sh

lint: ## rustfmt and clippy, as CI runs them
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

.PHONY: fuzz
fuzz: ## Parser fuzzing: 100,000 cases per property (RFB client, websocket frames, quantities, durations, selectors, image refs and configs)
	IRONVIRT_FUZZ_CASES=$${IRONVIRT_FUZZ_CASES:-100000} cargo test -p ironvirt-crds -p ironvirt-images -p ironvirt-stream -p ironvirt-apiserver-subresources \
		--test fuzz_parsers --test fuzz_frames --test fuzz_rfb

clean-state: stop ## Stop and remove the state directories (.state/)
	rm -rf .state

.PHONY: run-node test-node
run-node: ## A real kubelet node (containerd + runc) in the bed of `make run`, starting that bed first when it is not up (KUBELET_NODE=kubelet-1)
	@hack/run-node.sh

test-node: ## The kubelet node's bed test (tests/tests/kubelet_node.rs) on a control plane of its own; not part of `make test` yet
	@hack/test-node.sh

.PHONY: test-deploy
test-deploy: ## Install with kubectl apply -k on two kubelet nodes from the images of make images; VM, consoles, failover, upgrade, removal (tests/tests/deployed.rs); not part of `make test`
	@hack/test-deploy.sh

.PHONY: images
images: ## Build the operator, api and handler images with buildah from deploy/docker/*.Dockerfile, on base images made from Debian packages (no registry); not part of `make test`
	@hack/build-images.sh
