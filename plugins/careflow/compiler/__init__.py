"""Validated workflow -> engine-neutral graph that the DAG factory renders."""

from careflow.compiler.graph import CompiledNode, CompiledWorkflow, compile_workflow
from careflow.compiler.hashing import content_hash

__all__ = ["CompiledNode", "CompiledWorkflow", "compile_workflow", "content_hash"]
