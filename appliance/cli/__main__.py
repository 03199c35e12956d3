"""`python -m appliance.cli`: the `regcache` command."""

import sys

from appliance.cli import main

sys.exit(main())
