"""Moving an existing registry's content into Berth: from distribution's storage, or
from any running registry through app.client."""
