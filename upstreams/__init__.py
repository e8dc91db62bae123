"""Clients of what is across the network (Flash, Clockchain) and the rules for calling them that
every app shares. Imported by the apps; imports none of them."""
