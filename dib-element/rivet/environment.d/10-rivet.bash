export DIB_RIVET_COMPRESS=${DIB_RIVET_COMPRESS:-gzip -6}
# stress-ng and fio for the burn-in steps (1), or not (0).
export DIB_RIVET_BURNIN_TOOLS=${DIB_RIVET_BURNIN_TOOLS:-1}
