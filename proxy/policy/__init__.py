"""Policy files: rule model, loader, compiled index.  Pure: no network, no aiohttp, no boto3."""
