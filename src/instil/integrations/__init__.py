"""instil's methods inside other continual-learning frameworks, one module per framework.

Each module needs its framework, installed by the extra of the same name
(`pip install 'instil[avalanche]'` for `instil.integrations.avalanche`); `import instil`
never imports them.
"""
