"""Kernel plumbing: namespaces, bridges, veth, addresses, routes, IPAM and firewall drivers.

Pure modules (names, ipam, rules_*) import nothing from the kernel; modules that
touch the kernel say so in their name (kernel_*, fw_*) or their functions' names.
"""
