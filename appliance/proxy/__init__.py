"""The HTTPS side of the appliance: an aiohttp server behind the SNI certificate store."""
