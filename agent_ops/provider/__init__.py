"""Providers: where agentops rents boxes (vast.ai), and the lifecycle of a rented box.

`base` is the boundary (Provider protocol, Offer, Instance); `vast` implements it on the
official SDK (optional extra `agentops[vast]`, imported only when used); `lifecycle` rents,
waits, qualifies and gives back; `qualify` inspects a box through a Transport; `reputation`
remembers machines that failed us.
"""
