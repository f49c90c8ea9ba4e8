"""The security-baseline policy pack (Pulumi CrossGuard).

`policy.rules` holds the rules as pure functions over `policy.model.ResourceView`; they run in
three places: the pack (`pulumi preview --policy-pack policy`, adapter `policy.pack`), the
offline plan (`python -m scripts.plan --stack STACK --policy`, adapter `policy.plan`) and the
unit tests.
"""
