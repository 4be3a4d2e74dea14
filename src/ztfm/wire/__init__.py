"""Wire formats (layer 4): ``fleet.proto`` and its generated code in ``_gen/`` (never hand-edited).

Regenerate with::

    python -m grpc_tools.protoc -Iztfm/wire/_gen=src/ztfm/wire --python_out=src \
        --grpc_python_out=src --pyi_out=src src/ztfm/wire/fleet.proto
"""
