# shim: removed after the layout merge
from plad_core.training.torchrun import (SUPERVISOR_ENV, free_port, local_env, private_network_prefix,  # noqa: F401
                                         stop_tree, supervise, torchrun_command, watch_supervisor)
