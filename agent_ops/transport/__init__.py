"""Transports: the one place where agentops talks to a machine (base: the protocol; local; ssh; target).

Import the module you need: ssh pulls in paramiko, which a status poll never needs.
"""
