import sys

from portlink.ambassador.main import main

sys.exit(main())
