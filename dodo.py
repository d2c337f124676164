from release.dodo import *
