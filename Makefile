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
chaos: setup
	@node --import tsx test/chaos/chaos.ts --ops 1000 --crashes 24

# The fleet form: 2 control-plane replicas, 3 joined agents; replica and agent kills, drains.
chaos-fleet: setup
	@node --import tsx test/chaos/chaos.ts --fleet --agents 3 --replicas 2 --ops 1000 --crashes 24

clean:
	rm -rf node_modules sandbox-init/target
