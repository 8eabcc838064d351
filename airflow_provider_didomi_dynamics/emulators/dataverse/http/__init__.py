"""The HTTP layer of the Dataverse emulator (moto's ``responses`` and ``urls``): Web API, Entra ID and admin routes."""
