"""The learned controller: a contextual bandit over growth actions, fitted across runs.

`features` (what it reads), `settings` (its `[controller.learned]` knobs), `contexts` (the
library table of germination contexts), `fitting` (the posterior from the library, recorded
as `PolicyFitted`), `learned` (the controller). The posterior math is `esper_es.core.bandit`.
"""
