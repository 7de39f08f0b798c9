# The two commands a new machine needs: `make up` and `make test` (both install what is missing).
.PHONY: setup up test typecheck bench chaos chaos-fleet clean

setup:
	@bash scripts/setup.sh

up: setup
	@./bin/nestbox up

typecheck: setup
	@npx tsc -p tsconfig.json

test: setup typecheck
	@npm test --silent

bench: setup
	@npm run bench --silent && npm run bench:lifecycle --silent && npm run bench:sdk --silent

# Crashes, faults and concurrent clients, then every lifecycle invariant checked (see test/chaos/chaos.ts).
# `make chaos FLEET=1` (or `make chaos-fleet`) is the fleet mode: 2 control-plane replicas, 3 joined
# agents, snapshots in the S3 server; replica and agent kills, drains.
chaos: setup
	@node --import tsx test/chaos/chaos.ts $(if $(FLEET),--fleet --agents 3 --replicas 2) --ops 1000 --crashes 24

chaos-fleet:
	@$(MAKE) --no-print-directory chaos FLEET=1

clean:
	rm -rf node_modules sandbox-init/target
