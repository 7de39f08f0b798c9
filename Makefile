# The two commands a new machine needs: `make up` and `make test` (both install what is missing).
.PHONY: setup up test typecheck bench clean

setup:
	@bash scripts/setup.sh

up: setup
	@./bin/nestbox up

typecheck: setup
	@npx tsc -p tsconfig.json

test: setup typecheck
	@npm test --silent

bench: setup
	@npm run bench --silent && npm run bench:lifecycle --silent

clean:
	rm -rf node_modules sandbox-init/target
