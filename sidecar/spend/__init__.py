"""What requests cost and what may still be spent.

Owns: the shipped price table (table.py), which price applies to a node and model and what a request
cost (prices.py), spend per node, model, day and month and the budget verdicts (ledger.py), what `check`
says about both (plan.py), and the recorder that prices each finished request, keeps the ledger, takes
nodes out for budget and hands the request to the journal (recorder.py). prices.py and ledger.py are pure.
Imports config, formats, observe, nodes (the budget gate and the runtime) and journal.
"""
