// SPDX-License-Identifier: BSD-2-Clause
// The least a KVM VMM can do for the exit round-trip benchmark: one vCPU, the 64 KiB boot ROM read-only at
// 0xffff0000 and copied below 1 MiB (as a PC's chipset shadows it), no devices. IN from any port reads 0x60 (a 16550's
// line status with the transmitter empty); OUT to 0xf4 ends the run. Everything else a real VMM does per exit
// (device models, locking, bookkeeping) is left out, so its time is the kernel's floor for that ROM on this host.
// Usage: kvm-floor ROM  (prints the exits and the loop's wall time)
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); _exit(1); }

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: kvm-floor ROM\n"); return 1; }
  int kvm = open("/dev/kvm", O_RDWR);
  if (kvm < 0) die("/dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0)) die("KVM_CREATE_IRQCHIP");
  unsigned char *rom = mmap(0, 65536, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  unsigned char *low = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  int fd = open(argv[1], O_RDONLY);
  if (fd < 0 || read(fd, rom, 65536) != 65536) die(argv[1]);
  memcpy(low + 0xf0000, rom, 65536);
  struct kvm_userspace_memory_region hi = {.slot = 0, .flags = KVM_MEM_READONLY, .guest_phys_addr = 0xffff0000,
                                           .memory_size = 65536, .userspace_addr = (unsigned long)rom};
  struct kvm_userspace_memory_region lo = {.slot = 1, .guest_phys_addr = 0, .memory_size = 1 << 20, .userspace_addr = (unsigned long)low};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &hi) || ioctl(vm, KVM_SET_USER_MEMORY_REGION, &lo)) die("KVM_SET_USER_MEMORY_REGION");
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  struct kvm_run *run = mmap(0, ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  long exits = 0;
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    exits++;
    if (run->exit_reason != KVM_EXIT_IO) { fprintf(stderr, "exit reason %u\n", run->exit_reason); return 1; }
    if (run->io.direction == KVM_EXIT_IO_IN) memset((char *)run + run->io.data_offset, 0x60, run->io.size);
    else if (run->io.port == 0xf4) break;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("exits=%ld seconds=%.6f\n", exits, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
  return 0;
}
