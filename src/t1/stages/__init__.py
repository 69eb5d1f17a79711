"""The stages behind the ``t1`` command. Each imports the library, never another stage."""
