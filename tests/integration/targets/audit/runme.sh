#!/usr/bin/env bash
# The audit and audit_report modules against the real kernel, in network
# namespaces this test creates and removes (a playbook, not a role target:
# the target's name is also the name of the collection's audit role).
set -eux
ansible-playbook -i "${INVENTORY_PATH}" main.yml "$@"
